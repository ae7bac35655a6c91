pytest_plugins = ["tests.support.http_receiver"]
