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

/** How many listeners, groups and backends (a table's, or the shared memory's slots). */
export interface TableCounts {
  readonly listeners: number;
  readonly groups: number;
  readonly backends: number;
}

/**
 * Most listeners, groups and backends one running table may have (a config's, or the one DNS discovery
 * expands it to). They bound the shared memory every thread maps (src/shared/state.ts): lb reserves
 * address space for twice these at start (a reload that replaces every backend needs new slots while
 * the old ones are still held by open connections) and commits only what the tables use, so the limit
 * costs nothing until it is used. Far above any known farm.
 */
export const TABLE_LIMITS: TableCounts = { listeners: 10_000, groups: 100_000, backends: 100_000 };

/** Where a table first passes one of the limits above. */
export interface TableLimitProblem {
  /** The key path of the first listener, group or backend too many. */
  readonly path: (string | number)[];
  readonly message: string;
}

/** The first listener, group or backend past `limits`, or null. Counted in table order. */
export function tableLimitProblem(
  listeners: readonly { name: string; groups: readonly { backends: readonly unknown[] }[] }[],
  limits: TableCounts = TABLE_LIMITS,
): TableLimitProblem | null {
  const over = (what: string, limit: number, together: string) =>
    `one ${what.slice(0, -1)} too many: a table may have at most ${limit.toLocaleString('en-US')} ${what}${together} (the shared memory every lb thread maps holds that many)`;
  if (listeners.length > limits.listeners) {
    return { path: ['listeners', listeners[limits.listeners]!.name], message: over('listeners', limits.listeners, '') };
  }
  let groups = 0;
  let backends = 0;
  for (const l of listeners) {
    for (const [gi, g] of l.groups.entries()) {
      if (++groups > limits.groups) return { path: ['listeners', l.name, 'groups', gi], message: over('groups', limits.groups, ', all listeners together') };
      if (backends + g.backends.length > limits.backends) {
        const bi = limits.backends - backends;
        return {
          path: ['listeners', l.name, 'groups', gi, 'backends', bi],
          message: over('backends', limits.backends, ', all groups and listeners together, discovered ones included'),
        };
      }
      backends += g.backends.length;
    }
  }
  return null;
}
