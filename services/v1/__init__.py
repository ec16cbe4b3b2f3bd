"""Wire code generated from ``protos/specdec/v1`` by ``make protos`` (not edited by hand)."""
