"""The web dashboard (ADR 0055): server-rendered pages over ``jetagents._client.inspection``."""
