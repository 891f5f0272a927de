"""Data side: the data-root layout, feature stores, multitask sampling."""
