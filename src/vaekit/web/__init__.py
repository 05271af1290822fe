"""Web front ends of a trained run: ``vaekit serve`` (JSON API, :mod:`.api`) and ``vaekit explore``
(the latent-space explorer, :mod:`.explorer`). Both need the ``explore`` extra (Starlette and
uvicorn): ``pip install 'vaekit[explore]'``; nothing here is imported by the rest of vaekit."""
