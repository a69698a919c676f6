"""The services beside storage: Modality Worklist, Query/Retrieve and Storage Commitment."""
