"""CDNOW repurchase: one source (the CDNOW purchase log), one entity (customer), one model."""
