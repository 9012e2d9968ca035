"""The pieces every stage stands on: records, their files, configs, registries, run manifests."""
