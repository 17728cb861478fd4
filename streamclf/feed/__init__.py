"""The ZeroMQ feed: message schema (`schema`), the daemon's PUB side (`publisher`), and a client
(`subscriber`). Wire format and security: docs/feed.md."""
