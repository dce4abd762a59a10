export { spawnRole, type RoleProcess } from '../../src/cluster/processes.ts';
