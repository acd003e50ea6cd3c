"""tokex: AWS workload identity in, short-lived KMS-signed JWT out."""

__version__ = "0.1.0"
