"""The competition's serving limits, in one place (COMPETITION.md, "Serving"). The local gateway, the inference
config's per-call timeout and per-series limit (the budget guard's inputs) and the smoke test read them from here.
Standard library only."""

# The competition gateway answers each series call within this long (`set_response_timeout_seconds(30 * 60)`); the
# first call, which may load the models, has no deadline.
SERIES_TIMEOUT_S = 30 * 60
# serve() must be reached within this long of the notebook starting, or the rerun fails.
SERVER_START_LIMIT_S = 15 * 60
# Inference gives up on a series (answers the priors) after this share of the per-series limit, so the answer still
# reaches the gateway in time.
SERIES_GIVE_UP_FRACTION = 2 / 3
