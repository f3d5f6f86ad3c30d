"""A chain's status, derived from its step records: defined in ``worker.chain_status``
(the worker builds a chain's final record for its callback too); re-exported here,
where producers have always imported it from."""

from worker.chain_status import ChainState, ChainStatus, ChainStep, derive_chain_status

__all__ = ["ChainState", "ChainStatus", "ChainStep", "derive_chain_status"]
