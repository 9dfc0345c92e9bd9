from .models import MyModel


def bump(request, model_id):
    """Count one more run on the row; a job that takes ``request`` runs
    inside ``request.tm``, with the application's ``request.dbsession``."""
    model = request.dbsession.get(MyModel, model_id)
    if model is None:
        raise LookupError(f'MyModel {model_id} does not exist')
    model.value += 1
    return model.value
