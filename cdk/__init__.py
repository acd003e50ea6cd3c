"""tokex infrastructure (AWS CDK v2): see tokex_stack.py and docs/deploy.md."""
