"""The gRPC layer: it validates, converts and translates errors; no business rule lives here."""
