"""Import tables beside the ONNX importer: contrib and QDQ ops rewritten into standard ONNX.

``expand_model`` runs before the importer's own checks: every node whose (domain, op type)
has an expansion (``contrib.EXPANSIONS``, ``qdq.EXPANSIONS``, ``quark.EXPANSIONS``) is replaced by the standard
nodes computing the same, so the rest of maiac sees only ops it lowers.
"""

from maiac.importers.expand import carries_model_quant, expand_model, model_quant_table

__all__ = ["carries_model_quant", "expand_model", "model_quant_table"]
