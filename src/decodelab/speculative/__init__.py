"""Image-token decoders on one contract (see ``base.py``); importing registers them."""

from decodelab.speculative import ar, mulo, nar, sjd  # noqa: F401  (registration)
from decodelab.speculative.base import DecodeContext, DecodeOutput, Decoder, TokenModel, create_decoder, list_decoders
from decodelab.speculative.sampling import SamplingConfig

__all__ = [
    "DecodeContext",
    "DecodeOutput",
    "Decoder",
    "SamplingConfig",
    "TokenModel",
    "create_decoder",
    "list_decoders",
]
