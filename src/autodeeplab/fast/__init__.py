"""The exact speed path of the search supernet: the same modules as the reference, fewer and larger calls,
chosen once from :class:`~autodeeplab.fast.execution.ExecutionConfig` (:func:`.supernet.build_supernet`)."""
