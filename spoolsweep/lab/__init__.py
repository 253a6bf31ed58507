"""Lab parts on 127.0.0.1 that the demo and the tests share: a private Postfix and an SMTP sink."""
