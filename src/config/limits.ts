// Bounds on what a config file may be. Far above any real config (the complete reference example is
// ~10 KB and 7 levels deep), and low enough that parsing, validating and locating errors in the largest
// and deepest file allowed takes milliseconds, not seconds, and a bounded amount of stack and memory.

/** Largest config file read, in bytes (4 MiB). A larger file is refused before it is read. */
export const MAX_CONFIG_BYTES = 4 * 1024 * 1024;

/**
 * Deepest key path allowed: table names, dotted-key parts, array elements and inline tables each count
 * one level (`listeners.web.groups[0].backends[1].health.expect` is 7).
 */
export const MAX_CONFIG_DEPTH = 64;

/**
 * Most problems reported for one file; the rest are counted in one last line. Past a few screens nobody
 * reads them, and each costs work (a "did you mean" hint compares the key with every known key).
 */
export const MAX_REPORTED_PROBLEMS = 100;
