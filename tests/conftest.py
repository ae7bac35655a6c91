pytest_plugins = ["tests.support.http_receiver", "tests.support.redis_server"]
