def includeme(config):
    config.add_route('home', '/')
    config.add_route('models', '/models')
    config.add_route('model', '/models/{id}')
