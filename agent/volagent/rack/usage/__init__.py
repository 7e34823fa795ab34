"""Usage: which directories the containers of each host use (recorder, for gc), and what each
namespace holds (measure, a walk of it; share, which host walks it; task, the root task)."""
