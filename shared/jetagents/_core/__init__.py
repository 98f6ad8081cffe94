"""Pure core: ids, wire format, agent model, clock, retry, ring, CRDTs, vector clocks, decisions. No I/O, no nats."""
