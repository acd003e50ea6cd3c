#!/usr/bin/env python3
"""CDK entry point: `python app.py` or `npx aws-cdk@2 synth` (see docs/deploy.md)."""

from cdk.tokex_stack import build_app

app, _stack = build_app()
app.synth()
