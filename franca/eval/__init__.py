"""The paper's evaluation protocols (one module each), feature extraction, metrics, shared evaluate() arguments.
May import franca.data, franca.models, franca.losses, franca.utils and the package root; never train, rasa, viz."""
