"""Names the stages share until the model declarations (DESIGN §11) own them.

Training, scoring, serving and the CLI import these downward, so no stage imports another only for
a default.
"""

from __future__ import annotations

#: The model trained, scored and served when none is named.
DEFAULT_MODEL = "repurchase_90d"
