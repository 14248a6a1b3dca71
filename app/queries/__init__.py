"""The domain queries: plain functions of an ``AtlasStore`` that answer with app.models.

Both the JSON API's routers and the Dash views call them; they know nothing of HTTP. They
raise the store's errors (``UnknownAtlas``, ``UnknownItem``, ``BadParameter`` from app.data,
``AtlasError`` from analysis.atlas), which the API maps to status codes in app/api/errors.py.

* ``atlases``   the atlases served, one atlas's manifest, spectra of every layer
* ``layers``    points, lobes, crystal faces and the atom summary of one layer
* ``features``  a feature's card, search, the Neuronpedia link
* ``exports``   a selection of features (ids, ranges or a lobe) as a table
* ``figures``   the view a figure is drawn for, and the figure itself
* ``latent``    the latent geometry: 3-D captured states, norms, separation, a token in context
"""
