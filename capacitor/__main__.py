from capacitor.cli.main import main

raise SystemExit(main())
