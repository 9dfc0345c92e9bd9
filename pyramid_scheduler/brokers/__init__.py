"""The brokers: connections and publishing, the SQL and Redis transports, event fan-out."""
