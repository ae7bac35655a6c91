import os

from hypothesis import Phase, settings

pytest_plugins = ["tests.support.http_receiver", "tests.support.redis_server"]

# `make mutate` runs the tests once per mutant: one failing example kills it, so the mutation
# run skips shrinking (minutes for a stateful test) and the example database (each run alone).
settings.register_profile(
    "mutate", phases=[Phase.explicit, Phase.generate], database=None, print_blob=False
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
