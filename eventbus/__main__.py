from eventbus.cli import main

raise SystemExit(main())
