"""The rack's shared records on the shared filesystem: heartbeats, usage, the registry of binds,
namespace owners, quotas, the trash."""
