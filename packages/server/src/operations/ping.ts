/** Draft 4.7.12: ping proves the channel works and does nothing else. */
import { Status } from '@openkms/protocol';
import type { Handler } from './context.js';

export const ping: Handler = async () => ({ status: Status.OK });
