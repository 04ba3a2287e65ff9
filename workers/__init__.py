"""Actor side of toklabel: models, SAEs, harvesting, discriminators, the label optimiser, scoring."""
