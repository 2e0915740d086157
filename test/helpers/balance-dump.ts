// balance.md §10's real `balance -p` output for its first exchange (fm build, identical code): the client
// sent `GET / HTTP/1.0\r\nX: a\b<00><FF><7F>\n`, an echo backend answered with a `[7001] ` prefix, then
// the client closed. Shared by the formatter's unit test and the end-to-end dump test.

export const BALANCE_DUMP_REQUEST = Buffer.concat([Buffer.from('GET / HTTP/1.0\r\nX: a\\b'), Buffer.from([0x00, 0xff, 0x7f, 0x0a])]);

export const BALANCE_DUMP_FIRST_EXCHANGE: readonly string[] = [
  '-> 26',
  'GET / HTTP/1.0\\0D\\0A',
  'X: a\\\\b\\00\\FF\\7F\\0A',
  '',
  '-< 33',
  '[7001] GET / HTTP/1.0\\0D\\0A',
  'X: a\\\\b\\00\\FF\\7F\\0A',
  '',
  '-> 0',
  '',
];
