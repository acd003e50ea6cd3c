"""JWT claims, signing (through a Signer) and the JWKS."""
