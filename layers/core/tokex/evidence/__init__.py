"""Evidence of who the caller is: the signed STS request and IMDS documents."""
