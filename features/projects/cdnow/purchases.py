"""CDNOW purchases: 69,659 purchases of 23,570 customers, 1997-01-01 .. 1998-06-30.

The shipped fixed-width text lands through the ``cdnow`` parser (``jobs/ingest/cdnow.py``:
``event_id`` = a hash of the customer-day and the order's number within it, so a re-export
with another header or lines keeps the ids; ``event_ts`` = the purchase date 00:00 UTC, ``ingested_at`` = the end
of that day, ``category`` = a price band of dollars per CD). Attribution: ``jobs/data/README.md``.
"""

from features.source import Column, Key, ParserLander, Source

PRICE_BANDS = ("free", "budget", "standard", "premium")

CDNOW_PURCHASES = Source(
    name="cdnow_purchases",
    keys=(Key("customer_id", "int64", min=1, description="CDNOW customer number (1 .. 23,570 in the file)"),),
    columns=(
        Column("n_items", "int64", min=0, max=1000, not_null_share=0.95, description="CDs bought"),
        Column("amount", "double", min=0, max=50000, mean=(1, 1000), not_null_share=0.9, description="dollars paid"),
        Column(
            "category", "string", allowed=PRICE_BANDS, not_null_share=0.95, description="price band of dollars per CD"
        ),
    ),
    lander=ParserLander("cdnow"),
    span=("1997-01-01", "1998-06-30"),
    description=__doc__.strip().splitlines()[0],
    owner="lockstep",
)
