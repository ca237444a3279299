"""Many doors, one site (issue #18): a hub that owns the people and doors that keep deciding offline, over NATS
JetStream. ``broker``: the site's nats-server, its configuration and its least-privilege door credentials."""
