/*
 * colo-manager.pml from the state a re-protection starts in: the primary
 * alone under a sole lease, its released output covered by no checkpoint,
 * no successor, a fresh secondary waiting for the migration into COLO.
 * The rules and states are colo-manager.pml's (see REPROTECT there);
 * what this run checks is the naming of the successor (TXN_PROTECT).
 *
 * model-mutants: PROTECT_WHILE_SOLE
 * model-pan-flags: -E
 *
 * 40 million states, 5 to 8 minutes, 3.5 GB (its mutant: 3 minutes).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#define REPROTECT
#include "colo-manager.pml"
