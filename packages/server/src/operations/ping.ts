/** Draft 4.7.12: ping proves the channel works and does nothing else. */
import { Status } from '@openkms/protocol';
import type { Operation } from './context.js';

export const ping: Operation = async () => ({ status: Status.OK });
