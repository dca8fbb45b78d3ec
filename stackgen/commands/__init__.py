"""Command groups beyond validate/plan/schema; each module registers its commands on stackgen.cli.app."""
