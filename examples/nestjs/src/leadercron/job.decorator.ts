import { SetMetadata } from '@nestjs/common';
import type { LeadercronJobOptions } from './leadercron.jobs.js';

/** Metadata key under which @LeadercronJob stores its settings. */
export const LEADERCRON_JOB = 'leadercron:job';

/** What @LeadercronJob records on a method. */
export interface LeadercronJobMetadata extends LeadercronJobOptions {
  name: string;
}

/**
 * Marks a method of a provider as the code of leadercron job `name`: the
 * sidecar's LEADERCRON_JOB_<NAME> triggers it through POST /jobs/{name}. The
 * method receives a LeadercronRun; its returned promise is awaited. It
 * replaces @Cron from @nestjs/schedule: the schedule moves to the sidecar.
 */
export function LeadercronJob(name: string, options: LeadercronJobOptions = {}): MethodDecorator {
  return SetMetadata<string, LeadercronJobMetadata>(LEADERCRON_JOB, { name, ...options });
}
