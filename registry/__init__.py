"""PortLLM registry: the system of record for bases, assistants, patches, runs, evaluations,
rollouts and their audit trail. Imports nothing else of PortLLM and never imports torch;
callers pass the database URL and artifact folder from their settings.

    registry.db         make_engine, make_session_factory, session_scope
    registry.models     the SQLAlchemy models and state enums
    registry.services   the functions that change and read them (each change audited):
                        catalog (bases, assistants, patches), runs, rollouts, views
    registry.artifacts  ArtifactStore
    registry.errors     RegistryError and the errors people see
    registry.cli        upgrade / current / check for `portllm db ...`
"""
