// Whether the tests of the addon's own accept path run here.

import { nativeAcceptAvailable } from '../../src/proxy/splice.ts';

/** Whether this thread's addon accepts natively, and if not why. */
export const nativeAccept = nativeAcceptAvailable();

/**
 * Skipped only where the native accept cannot run and that is expected: no addon outside CI (no compiler
 * at install), or a run that turns it off (LB_SPLICE=off, the JS relay's pass of CI; LB_NATIVE_CONNECT=off
 * or LB_NATIVE_ACCEPT=off). Under CI without those, a missing addon fails the tests instead.
 */
export const nativeAcceptSkipped =
  !nativeAccept.ok && (!process.env['CI'] || ['LB_SPLICE', 'LB_NATIVE_CONNECT', 'LB_NATIVE_ACCEPT'].some((k) => process.env[k] === 'off'));
