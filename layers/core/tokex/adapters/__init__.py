"""Every AWS call of the runtime, one module per service or table.

The use cases (exchange.py, introspection.py, publish.py) and the domain (evidence/,
policy/, tokens/) depend on small interfaces; the classes here implement them with botocore
(or, for the STS forwarder, urllib3). `aws_clients.py` builds every botocore client and
`errors.py` maps every AWS SDK failure to `TemporarilyUnavailable`, with one reason format.
"""
