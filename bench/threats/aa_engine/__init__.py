"""Our AutoAttack engine: the official ensemble's attacks (APGD, FAB, Square) batched per point, with draws keyed
by point and finished points compacted out; chosen per card with ``engine: bench`` (``bench.threats.autoattack``)."""
