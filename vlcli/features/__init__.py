"""Feature extraction: CLIP grid features through open_clip, BUTD TSV conversion (spec data-and-eval §3).

Heavy imports (torch, open_clip) happen in :mod:`vlcli.features.clip`; import it only when extracting.
"""

from vlcli.features.common import ExtractionError, Progress, SilentProgress

__all__ = ["ExtractionError", "Progress", "SilentProgress"]
