"""The tokex proxy as a Lambda extension: `python -m tokex.extension`, started by Lambda
from the extension layer (cdk/extension_layer.py) beside a Python function."""
