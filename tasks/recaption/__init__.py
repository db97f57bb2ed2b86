"""The recaption stage: HQ-CLIP four-field annotations per pool row on a Ray Data actor pool."""
